"""LSN text <-> integer, as PostgreSQL prints them (X/Y, hexadecimal)."""


def parse_lsn(text):
    hi, lo = text.strip().split("/")
    return (int(hi, 16) << 32) | int(lo, 16)


def format_lsn(value):
    return f"{value >> 32:X}/{value & 0xFFFFFFFF:X}"
