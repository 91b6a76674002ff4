"""The gateway's Bluetooth LE side (protocol §8.4, §8.5, §8.7), through bleak's public API and
BlueZ over D-Bus: scanning the beacons' advertisements into the inventory, pushing releases over
GATT to beacons without Wi-Fi, and advertising the latest release per target."""
