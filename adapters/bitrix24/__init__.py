"""Bitrix24 adapter."""
