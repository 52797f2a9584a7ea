"""Test app for privagg's asynchronous mode on Flower."""
