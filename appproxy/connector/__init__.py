"""The appproxy connector, inside the private network."""
