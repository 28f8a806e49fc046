"""belle.app: the chat engine, conversation store, CLI and UI. Never imports torch."""
