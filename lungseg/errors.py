"""The one error lungseg raises for the user's data or parameters (the bottom layer: it imports nothing)."""


class LungsegError(ValueError):
    """A problem with the user's data or parameters; the message names the file or parameter and the fix."""
