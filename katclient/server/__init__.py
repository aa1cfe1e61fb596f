"""KATCP device server on tornado.tcpserver."""
