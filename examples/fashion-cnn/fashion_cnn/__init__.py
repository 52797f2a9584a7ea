"""A Fashion-MNIST CNN trained with Flower, with or without privagg."""
