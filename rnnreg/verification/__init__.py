"""``rnnreg verify``: the checks every rule passes, built-in or plug-in (docs/extending.md)."""
