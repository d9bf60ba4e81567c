"""The self-coding engine: the four replica roles and the workflow that drives them."""
