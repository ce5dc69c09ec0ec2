def main() -> None:
    raise SystemExit("gearshift: CLI not built yet")
