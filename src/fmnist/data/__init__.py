"""The data: Fashion-MNIST's facts and files (find, download, verify, parse, split), the original report's
network and published figures, and photos turned into 28x28 images as the dataset was made."""
