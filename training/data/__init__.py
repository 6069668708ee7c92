"""Records: reading a channel's files in any supported format, checking them, and turning
conversations into the tokens and loss masks (packed rows) a trainer takes."""
