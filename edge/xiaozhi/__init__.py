"""The xiaozhi WebSocket protocol (DESIGN §5) at `/xiaozhi/v1/`: ESP32 voice devices and
their desktop clients talk to vagent unchanged. A stock device finds it through its OTA URL,
`/xiaozhi/ota/` (ota.py), which also activates it and offers firmware (firmware.py)."""
