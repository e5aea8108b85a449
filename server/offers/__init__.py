"""Offers: what staff could offer the guest in front of them, with a one-line reason."""
