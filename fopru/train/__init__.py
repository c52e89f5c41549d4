"""``stage=train``: training a model that the framework can build untrained (the embedded mini LLaVA)."""
