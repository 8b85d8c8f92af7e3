"""CRM adapters: each CRM has a client, pagination, an error table, mapping and an emulator."""
