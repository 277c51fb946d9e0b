"""The Kaggle notebook kernel: its bundle (wheel dataset, notebook, metadata), the ImageNet weight files
it may need, the `kaggle` command line that uploads and follows it, and a local check on Kaggle's stack."""
