"""fleetctl: the command-line client. Must start fast: import heavy libraries lazily.

Layout
------
``main``        entry point (``fleetctl.main:main``), exit statuses
``cli``         commands, flags, ``FLEETCTL_*`` environment, help texts (argparse)
``config``      global options and endpoints
``client``      fleetd's HTTP API over http.client (unix socket, TCP, TLS, token); the
                ``Cluster`` interface the commands use
``etcd_driver`` the same interface straight on etcd (``--driver etcd``; imported only then)
``tunnel``      ``--tunnel`` through the system ssh client; ssh options
``arguments``   unit arguments: name mangling, local files, globs, templates
``output``      list tables and JSON (pure); ``tabwriter``: Go's text/tabwriter (pure)
``waiting``     blocking until units reach a state: reasons, progress line
``cmd_list``, ``cmd_units``, ``cmd_remote``  the commands
``unit_plan``   what submit/load/start/stop/... act on, checked before anything changes

Where fleetctl differs from fleet's (all deliberate)
-------------------------------------------------
- Exit status 2 for usage errors (fleet exited 0 on a bad flag), 1 for any failure.
  Unknown ``--fields`` names are usage errors naming the valid fields.
- ``--driver`` in any case (fleet's help spells it ``API``; fleet took exactly ``API`` or
  ``etcd``). ``list-unit-files`` takes fleet's deprecated ``tmachine`` field, with fleet's
  warning. The whole list, with reasons: docs/commands.md, "Differences from fleet".
- Every argument is checked before anything changes: one bad unit file (reported with
  file and line) means nothing is submitted.
- ``--block-attempts``: one attempt is two seconds, as in fleet. Units that cannot be placed are shown
  with the engine's reason while waiting and named with it when the attempts run out
  (fleet waited silently, forever by default). A terminal gets a live progress line.
- ``start``/``load``/``stop``/``unload`` of a unit already in that desired state still
  wait for (and print) the state, so the command's promise holds when it returns; fleet
  skipped them silently. ``stop``/``unload``/``restart`` of a unit that does not exist
  is an error (fleet skipped it silently); ``destroy`` of one stays a no-op (with a note).
- ``load`` of a launched unit is refused (docs/commands.md's table; fleet silently stopped it).
- ``destroy`` waits (unless ``--no-block``) until no machine reports the unit any more.
- ``restart`` waits for the stop before starting again, also for global units (fleet's
  restart of a global unit did nothing); a loaded unit is simply started.
- ``start --replace`` waits until the unit's machine runs the new body (its hash).
- ``journal`` and ``status`` read the machine's own fleetd API instead of SSH; a global
  unit's journal shows every machine, lines prefixed ``<short machine id>: ``, and ``-f``
  follows all of them; ``status`` of a global unit prints one block per machine.
  ``--sudo`` is accepted and ignored.
- ``cat`` accepts several units (printed one after the other, a blank line between).
- ``ssh`` runs the system ``ssh`` (``--tunnel`` becomes ``-J``; strict host key checking
  maps to ``StrictHostKeyChecking=ask`` with the known-hosts file, off to ``no`` with
  ``/dev/null``); ``--tunnel`` for the API itself is an ``ssh -N -L`` forward.
- Beyond fleet: ``--output json`` for the list commands, ``--api-token`` (or
  ``--api-token-file``) for the TCP API, sent only over TLS or to an endpoint given,
  ``http://host`` without a port means fleetd's port 54728, and with ``--driver etcd`` and
  no endpoint given the endpoint is ``http://127.0.0.1:2379``.
"""
