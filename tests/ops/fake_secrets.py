"""The fake secrets the ops tests try to leak; each must never appear in any output."""

SECRET = "sk-test-0123456789abcdef-never-shown"
