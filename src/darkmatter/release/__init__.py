"""Artefacts for reviewers without credentials.

- :mod:`~darkmatter.release.objects`: the DVC cache objects the current ``dvc.lock`` references.
- :mod:`~darkmatter.release.remote`: publish them as a static tree any web host can serve (a
  read-only DVC HTTP remote), and pull from it with a reachability check that names the remote.
- :mod:`~darkmatter.release.bundle`: one checksummed archive of them (for a Zenodo record or a
  release page) and its import into a clone's cache.

``python -m darkmatter.release {publish,pull,bundle,import}``; see the README's "For reviewers".
"""
