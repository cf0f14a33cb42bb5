"""Date formats for the pages Django renders (the admin above all), found through FORMAT_MODULE_PATH."""
