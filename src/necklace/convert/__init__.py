"""Weight converters from other libraries' necks."""
