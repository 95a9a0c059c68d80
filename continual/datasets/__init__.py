"""Datasets for tasks and probes.

    catalog           what datasets there are (names, class lists, where files live); no torch
    source            Pool / Source: labelled images a source module can decode on demand
    embedded          MNIST, Fashion-MNIST, Animal-MNIST, digits: files shipped by installed packages
    torchvision_sets  torchvision's datasets under data_root
    folders           the user's image folders, and RESISC45
    tasks             a task or probe spec -> TaskData (selection, resizing, caching)

Importing this package loads the catalog only, so the schema and `continual validate` stay light.
"""

from continual.datasets.catalog import DATASETS, DataError, DatasetInfo, files_present, resolve_classes

__all__ = ["DATASETS", "DataError", "DatasetInfo", "files_present", "resolve_classes"]
