"""Pipeline definitions: which stages run and which streams connect them."""
