"""Files that ship with the app: model catalog, templates, fonts, icons, sample and calibration data."""
