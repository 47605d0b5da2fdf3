"""Thin CLI wrappers: parse arguments, call one library function, print its result."""
