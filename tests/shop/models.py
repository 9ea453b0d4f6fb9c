"""A second app with a model named like one in catalog (Book), to prove they do not collide."""

from django.db import models


class Book(models.Model):
    name = models.CharField(max_length=100)
    price = models.DecimalField(max_digits=8, decimal_places=2)


class Customer(models.Model):
    email = models.EmailField(unique=True)
