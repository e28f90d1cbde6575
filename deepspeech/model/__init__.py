"""The Deep Speech 2 acoustic model: its configuration (config), layers (layers), streaming state (state) and the
model with its CTC loss (ds2)."""
