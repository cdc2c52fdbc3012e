"""Student models: presets, construction, initialisation from a teacher."""
