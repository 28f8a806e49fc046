"""The Flet chat UI (desktop, web, phone). Talks to the store and engine through belle.app.session."""
