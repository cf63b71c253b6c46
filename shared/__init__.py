"""tradeloop's contracts and common code: streams, messages, settings, storage, broker helpers."""
