"""Reading labelled photos: decoding, datasets and splits."""
