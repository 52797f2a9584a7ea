"""privagg on Flower: thin app modules that point Flower at privagg's ServerApp and ClientApp."""
