"""Command-line tools installed with the package: conversion, calibration, benchmarks, evaluation."""
