"""Pure reward functions: parsers of model text and the math that scores it (no model loading at import)."""
