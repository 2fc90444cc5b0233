"""Voice server token authority: a self-hostable stand-in for voice.pinecall.io."""
