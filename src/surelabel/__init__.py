"""surelabel: classify text with a language model and say how sure it is."""
