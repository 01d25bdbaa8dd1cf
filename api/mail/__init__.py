"""Mail: rendering the emails (templates, languages) and the transports that carry them."""
