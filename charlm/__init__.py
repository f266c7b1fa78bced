"""charlm: a character-level recurrent language model for classical Chinese poetry."""

__version__ = "0.1.0"

from charlm.errors import CharLMError  # noqa: E402

__all__ = ["CharLMError", "__version__"]
