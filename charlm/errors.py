"""The one error type the library raises for things a user can fix."""


class CharLMError(Exception):
    """A problem with the user's input, files or options, phrased as one sentence."""
