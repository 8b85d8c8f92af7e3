"""crm-retention connector: config, errors, HTTP, mirror, push, scheduler and CLI."""
