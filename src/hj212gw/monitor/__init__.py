"""Monitoring of the devices the gateway serves (issue #12): their state (online, silent, offline),
the gaps in their minute/hour/day data on the DataTime grid, the command channel to a DAS and the
automatic backfill (补传) of missing periods.

The server tells monitoring what happens through `hub.Monitor` (an MN bound to or released by a
connection of this replica, a packet's rows committed); monitoring never imports the server.
"""
