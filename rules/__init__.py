"""Pure retention rules: plain data in, decisions as data out (never imports httpx or sqlite)."""
