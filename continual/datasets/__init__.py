"""Datasets for tasks and probes.

    catalog           what datasets there are (names, class lists, where files live); no torch
    prompts           CLIP class names and prompt templates per dataset (zeroshot.json, from clip-benchmark)
    source            Pool / Source: labelled images a source module can decode; Images, a selection read by row
    embedded          MNIST, Fashion-MNIST, Animal-MNIST, digits: files shipped by installed packages
    torchvision_sets  torchvision's datasets under data_root
    folders           the user's image folders, RESISC45, ImageNet and ImageNet-R
    listed            datasets read from their own listings: Tiny-ImageNet, CUB-200
    store             decoded images on disk, decoded once per (dataset, split, size, source files)
    tasks             a task or probe spec -> TaskData (selection, reading through memory or the store)

Importing this package loads the catalog only, so the schema and `continual validate` stay light.
"""

from continual.datasets.catalog import DATASETS, DataError, DatasetInfo, files_present, resolve_classes

__all__ = ["DATASETS", "DataError", "DatasetInfo", "files_present", "resolve_classes"]
