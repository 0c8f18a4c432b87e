"""The xiaozhi WebSocket protocol (DESIGN §5) at `/xiaozhi/v1/`: ESP32 voice devices and
their desktop clients talk to vagent unchanged."""
