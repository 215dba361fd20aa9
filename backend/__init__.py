"""The backend port (`backend.port.Backend`) and its adapters side by side: the embedded
SQLite file (`backend.local`) and Convex's HTTP API (`backend.convex`).

Actors import `backend.port` only; the application picks an adapter
(`agent_runtime.app.backends.open_backend`).
"""
