"""Student models: presets, construction, initialisation from a teacher, pruned shapes.

Importing this package registers PrunedBert with the transformers Auto classes, so pruned student
folders load with AutoModelForSequenceClassification (or AutoModelForTokenClassification).from_pretrained.
"""
from students.modeling import register as _register

_register()
