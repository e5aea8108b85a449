"""The Regulars staff kiosk: a Kivy app over a Kivy-free session layer.

``session``, ``api``, ``outbox``, ``presenters`` and ``scanner.decode``/``scanner.wedge`` import
no Kivy, so they are tested as plain Python; ``app`` and ``screens`` are the thin Kivy shell.
"""

__all__: list[str] = []
