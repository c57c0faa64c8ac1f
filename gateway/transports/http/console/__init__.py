"""The pharmacist's console: server-rendered pages for people logged in with a session (session.py), each
page a module of its own, one layout (templates/base.html), one style sheet and one small script."""
