"""The Mailivery client's I/O, written once as async code; tools/unasync.py generates the sync face."""
