"""The one exception type that user-facing validation raises."""


class ConfigError(ValueError):
    """Bad user input (a budget, a component name, a shape): the message names the value and the valid choices.

    The command line turns it into a one-paragraph message and a non-zero exit instead of a traceback.
    """
