"""The one error type the library raises for things a user can fix."""


class CharLMError(Exception):
    """A problem with the user's input, files or options, phrased as one sentence."""


def describe(value: object, limit: int = 40) -> str:
    """A value from a file, for an error message: a string or number as its repr (control
    characters come out escaped) cut to ``limit`` characters, a container as its kind and size,
    so a hostile file can neither fill the terminal nor make the message itself fail."""
    if isinstance(value, (list, tuple, dict)):
        kind = "an object" if isinstance(value, dict) else "a list"
        return f"{kind} of {len(value)} item{'' if len(value) == 1 else 's'}"
    try:
        text = repr(value)
    except ValueError:  # an int with more digits than Python will print
        return "a number too long to show"
    return text if len(text) <= limit else text[: limit - 1] + "…"
